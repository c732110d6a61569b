"""sysexits.h exit codes: the contract between mail programs (Postfix, sendmail,
procmail) so that each of ours can stand in for theirs."""

EX_OK = 0
EX_USAGE = 64  # command line usage error
EX_DATAERR = 65  # bad input data
EX_NOINPUT = 66  # input file missing or unreadable
EX_NOUSER = 67  # addressee unknown
EX_NOHOST = 68  # host name unknown
EX_UNAVAILABLE = 69  # service unavailable
EX_SOFTWARE = 70  # internal software error
EX_OSERR = 71  # system error (e.g. cannot fork)
EX_OSFILE = 72  # critical OS file missing
EX_CANTCREAT = 73  # cannot create (user) output file
EX_IOERR = 74  # input/output error
EX_TEMPFAIL = 75  # temporary failure; the caller should retry
EX_PROTOCOL = 76  # remote error in protocol
EX_NOPERM = 77  # permission denied
EX_CONFIG = 78  # configuration error

# Codes after which a retry cannot help (usage, data, no input, no user, no
# host, no permission): a delivery that ends with one bounces, any other
# code -- a crash, a signal, an unknown one -- keeps the message for a retry.
PERMANENT = (EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_NOUSER, EX_NOHOST, EX_NOPERM)
