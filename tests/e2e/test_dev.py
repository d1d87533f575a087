"""`rotor serve --dev`: a local server with no config, and a grpcurl line that works as printed."""

from __future__ import annotations

import json
import pathlib
import re
import stat

from .support import DevServer, bash, env_with_bin


def test_dev_server_prints_a_working_grpcurl_line_and_a_fresh_secret_each_start(
    tmp_path: pathlib.Path,
) -> None:
    env = env_with_bin()
    with DevServer(tmp_path) as dev:
        first_line, first_secret = dev.grpcurl_line, dev.secret
        done = bash(first_line, env=env, cwd=tmp_path)  # verbatim, as a user pastes it
        assert done.returncode == 0, f"{first_line}\n{done.stderr}"
        issued = json.loads(done.stdout)
        token = issued.get("access_token", issued.get("accessToken", ""))
        assert token.count(".") == 2, issued

        kek = tmp_path / "data" / "kek.key"
        assert kek.is_file(), f"no dev key-encryption key at {kek}:\n{dev.banner}"
        assert stat.S_IMODE(kek.stat().st_mode) == 0o600, oct(kek.stat().st_mode)
        assert str(kek) in dev.banner or "kek.key" in dev.banner, "the banner does not say where the KEK is"

        export = dev.export_line
        if export is not None:  # the README's walkthrough pastes it
            assert re.search(rf"\bROTOR={re.escape(dev.address)}(\s|$)", export), export
            assert re.search(rf"\bAUTH={re.escape(dev.auth)}(\s|$)", export), export
    kek_before = kek.read_bytes()

    with DevServer(tmp_path) as again:
        assert again.secret != first_secret, "the demo secret did not change on restart"
        stale = bash(first_line, env=env, cwd=tmp_path)
        assert stale.returncode != 0 and "Unauthenticated" in stale.stderr, stale.stdout + stale.stderr
        fresh = bash(again.grpcurl_line, env=env, cwd=tmp_path)
        assert fresh.returncode == 0, fresh.stderr
    assert kek.read_bytes() == kek_before, "a restart replaced the dev key-encryption key"
