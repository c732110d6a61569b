"""The procmail-compatible rules language (procmailrc(5)), see pymda-rules(5).

``parser`` turns a rules file into recipe objects with line numbers,
``regex`` translates procmail's egrep dialect to Python ``re`` (with the
``^TO_`` family of macros, ``\\/`` and a guard against catastrophic
patterns), ``engine`` runs the recipes against one message, ``actions``
runs pipes and forwards, ``mbox`` writes mbox files under fcntl + dotlock.

Nothing here is imported unless a rules file exists (start-up cost).
"""
