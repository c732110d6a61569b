"""The parsed config kept beside the file (lib/configcache.py): an inetd
session skips tomllib, and nothing but the same bytes of the same file,
in a cache only the config's owner or root could write, is ever used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pymta.lib import config, configcache

REPO = Path(__file__).resolve().parents[2]
TEXT = 'hostname = "mx.example.test"\ndomains = ["example.test"]\nroot = "/var/lib/pymail"\n'


def _config(tmp_path, text=TEXT) -> Path:
    path = tmp_path / "pymail.toml"
    path.write_text(text)
    return path


def _loads_without_tomllib(path: Path) -> bool:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from pymta.lib import config; "
        f"cfg = config.load({str(path)!r}); print(cfg['hostname'], 'tomllib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "mx.example.test"
    return out[1] == "False"


def test_the_second_load_skips_tomllib(tmp_path):
    path = _config(tmp_path)
    assert not _loads_without_tomllib(path)  # parses, and keeps the parse
    assert configcache.cache_path(path).exists()
    assert _loads_without_tomllib(path)


def test_any_edit_is_read_at_once(tmp_path):
    path = _config(tmp_path)
    config.load(path)
    path.write_text(TEXT.replace("mx.example.test", "mx2.example.test"))
    assert config.load(path)["hostname"] == "mx2.example.test"


def test_a_cache_others_could_write_is_ignored(tmp_path):
    path = _config(tmp_path)
    config.load(path)
    cache = configcache.cache_path(path)
    os.chmod(cache, 0o666)
    st = os.stat(path)
    assert configcache.lookup(path, path.read_bytes(), st) is None
    os.chmod(cache, 0o644)
    assert configcache.lookup(path, path.read_bytes(), st) is not None
    if os.geteuid() == 0:
        os.chown(cache, 65534, -1)  # nobody's: not the config owner's, not root's
        assert configcache.lookup(path, path.read_bytes(), st) is None


def test_a_link_is_not_followed_and_garbage_is_ignored(tmp_path):
    path = _config(tmp_path)
    cache = configcache.cache_path(path)
    other = tmp_path / "other.toml"
    other.write_text(TEXT)
    config.load(other)
    cache.symlink_to(configcache.cache_path(other))
    assert configcache.lookup(path, path.read_bytes(), os.stat(path)) is None
    cache.unlink()
    cache.write_bytes(b"\x00garbage")
    assert config.load(path)["hostname"] == "mx.example.test"


def test_the_cache_has_the_config_permissions_never_wider(tmp_path):
    path = _config(tmp_path)
    os.chmod(path, 0o640)  # a config holding relay passwords
    config.load(path)
    assert os.stat(configcache.cache_path(path)).st_mode & 0o777 == 0o640


def test_an_unwritable_folder_still_loads(tmp_path):
    path = _config(tmp_path)
    st = os.stat(path)
    os.chmod(tmp_path, 0o555)
    try:
        if os.geteuid() != 0:
            assert not configcache.store(path, path.read_bytes(), {"hostname": "x"}, st)
        assert config.load(path)["hostname"] == "mx.example.test"
    finally:
        os.chmod(tmp_path, 0o755)


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "pymail.toml"
    path.write_bytes(b'hostname = "\xff"\n')
    try:
        config.load(path)
    except config.ConfigError as exc:
        assert "not UTF-8" in str(exc.problems)
    else:
        raise AssertionError("loaded")
