"""The README's grpcurl walkthrough works as written, against `rotor serve --dev`.

The harness takes the ```sh blocks under "## Try it with grpcurl", keeps every line
whose command is grpcurl (`grpcurl ...`, `timeout N grpcurl ...`, or `VAR=$(grpcurl ...)`,
continuation lines joined), and runs them verbatim, in order, in ONE bash process under
`set -eo pipefail`, so later lines see variables earlier lines set. The environment
provides ROTOR (host:port), AUTH (the demo client's base64 Basic credential) and PATH with
grpcurl on it; the README sets ACCESS, REFRESH and the like itself. A line that is meant
to fail, or a stream cut off by `timeout`, says so in the README (`|| true`).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from .support import DevServer, bash, env_with_bin, free_port

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
HEADING = "## Try it with grpcurl"
GRPCURL_COMMAND = re.compile(
    r"^(?:export\s+)?(?:[A-Za-z_][A-Za-z0-9_]*=\$\(\s*)?(?:timeout\s+\S+\s+)?grpcurl\s"
)
MARK = "### walkthrough line "


def walkthrough(markdown: str) -> list[str] | None:
    """The grpcurl lines of the walkthrough, in order; None when the README has none yet."""
    if HEADING not in markdown:
        return None
    section = markdown.split(HEADING, 1)[1].split("\n## ", 1)[0]
    lines: list[str] = []
    for block in re.findall(r"^```(?:sh|bash|shell)\s*\n(.*?)^```", section, re.M | re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ").strip()
            if GRPCURL_COMMAND.match(line):
                lines.append(line)
    return lines


def run_walkthrough(lines: list[str], dev: DevServer, cwd: pathlib.Path) -> tuple[str, list[str]]:
    """Run the lines in one bash; (stderr, each line's stdout)."""
    script = ["set -eo pipefail"]
    for i, line in enumerate(lines):
        script += [f"echo '{MARK}{i}'", line]
    env = env_with_bin(ROTOR=dev.address, AUTH=dev.auth)
    done = bash("\n".join(script) + "\n", env=env, cwd=cwd, timeout=120)
    outputs = re.split(rf"^{MARK}\d+\n", done.stdout, flags=re.M)[1:]
    if done.returncode != 0:
        failed = len(outputs) - 1
        where = lines[failed] if 0 <= failed < len(lines) else "?"
        raise AssertionError(f"the walkthrough stopped at line {failed}: {where}\n{done.stderr[-3000:]}")
    assert len(outputs) == len(lines)
    return done.stderr, outputs


def check_outputs(lines: list[str], stderr: str, outputs: list[str]) -> None:
    for bad in ("Code: Internal", "Code: Unknown", "Code: Unimplemented"):
        assert bad not in stderr, f"{bad} in the walkthrough:\n{stderr[-3000:]}"
    assert any('"access_token"' in out or '"accessToken"' in out for out in outputs), "no line issued a token"
    for line, out in zip(lines, outputs, strict=True):
        if "WatchKeyRotations" in line:
            assert "KEY_EVENT_TYPE_" in out, f"the stream printed no event: {line}\n{out}"
        if line.split()[0] == "grpcurl" and line.split()[-1] == "list":
            assert "rotor.v1.TokenService" in out, out


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with DevServer(tmp_path_factory.mktemp("dev")) as server:
        yield server


def test_the_readme_grpcurl_walkthrough_runs_as_written(dev: DevServer, tmp_path: pathlib.Path) -> None:
    lines = walkthrough(README.read_text()) if README.exists() else None
    if not lines:
        pytest.skip("README has no grpcurl walkthrough yet")
    stderr, outputs = run_walkthrough(lines, dev, tmp_path)
    check_outputs(lines, stderr, outputs)


SAMPLE = """
# Rotor

## Try it with grpcurl

```sh
export PATH="$PWD/.venv/bin:$PATH"
grpcurl -plaintext $ROTOR list
```

Trade a refresh token once:

```sh
REFRESH=$(grpcurl -plaintext -H "authorization: Basic $AUTH" -d '{"audience": ["demo-api"]}' \\
  $ROTOR rotor.v1.TokenService/Issue | python3 -c 'import json, sys; print(json.load(sys.stdin)["refresh_token"])')
$ grpcurl -plaintext -H "authorization: Basic $AUTH" -d "{\\"refresh_token\\": \\"$REFRESH\\"}" $ROTOR rotor.v1.TokenService/Refresh
grpcurl -plaintext -H "authorization: Basic $AUTH" -d "{\\"refresh_token\\": \\"$REFRESH\\"}" $ROTOR rotor.v1.TokenService/Refresh || true
timeout 2 grpcurl -plaintext -d '{}' $ROTOR rotor.v1.TokenService/WatchKeyRotations || true
```

## Next section

```sh
grpcurl -plaintext $ROTOR describe
```
"""


def test_the_walkthrough_harness_keeps_grpcurl_lines_in_order() -> None:
    lines = walkthrough(SAMPLE)
    assert lines is not None and len(lines) == 5
    assert lines[0] == "grpcurl -plaintext $ROTOR list"
    assert lines[1].startswith("REFRESH=$(grpcurl") and lines[1].endswith("""["refresh_token"])')""")
    assert lines[2].startswith("grpcurl ") and lines[4].startswith("timeout 2 grpcurl")
    assert walkthrough("# Rotor\n\nNo walkthrough here.\n") is None


def test_the_walkthrough_harness_runs_a_sample(dev: DevServer, tmp_path: pathlib.Path) -> None:
    lines = walkthrough(SAMPLE)
    assert lines is not None
    stderr, outputs = run_walkthrough(lines, dev, tmp_path)
    check_outputs(lines, stderr, outputs)
    assert "refresh_token" in outputs[2], "the first use of the refresh token failed"
    assert outputs[3] == "" and "Unauthenticated" in stderr, "the second use was not refused"


# -- "Verify tokens in your service": the Python examples, and examples/ ----------

PYTHON_HEADING = "## Verify tokens in your service"
EXAMPLES = README.parent / "examples"


def python_blocks(markdown: str) -> list[str]:
    """The ```python blocks of the section on verifying tokens, in order."""
    section = markdown.split(PYTHON_HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\s*\n(.*?)^```", section, re.M | re.S)


def run_python(path: pathlib.Path, dev: DevServer, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """`python path` in a shell that pasted the dev server's export line, as the README says."""
    assert dev.export_line is not None, dev.banner
    return bash(f"{dev.export_line}\n{sys.executable} {path}\n", env=env_with_bin(), cwd=cwd, timeout=60)


def test_the_readme_python_examples_run_as_written(dev: DevServer, tmp_path: pathlib.Path) -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2, "the README shows an asyncio and a threaded example"
    outputs = []
    for i, block in enumerate(blocks):
        script = tmp_path / f"example{i}.py"
        script.write_text(block)
        done = run_python(script, dev, tmp_path)
        assert done.returncode == 0, f"README example {i} failed:\n{block}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    assert outputs[0].startswith("verified demo ['demo.read']"), outputs[0]
    assert outputs[1].splitlines() == ["verified demo", "rejected INVALID_SIGNATURE"], outputs[1]


def test_the_example_service_admits_a_token_it_verified_locally(
    dev: DevServer, tmp_path: pathlib.Path
) -> None:
    assert dev.export_line is not None, dev.banner
    port = free_port()
    env = env_with_bin(ORDERS_LISTEN=f"127.0.0.1:{port}")
    log = (tmp_path / "orders.log").open("w")
    service = subprocess.Popen(
        ["bash", "-c", f"{dev.export_line}\nexec {sys.executable} {EXAMPLES / 'orders_service.py'}"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while "serving on" not in (tmp_path / "orders.log").read_text():
            assert service.poll() is None, (tmp_path / "orders.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "orders.log").read_text()
            time.sleep(0.05)
        done = bash(
            f"{dev.export_line}\n{sys.executable} {EXAMPLES / 'orders_client.py'}\n",
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "orders.log").read_text()
        assert done.stdout.startswith("orders of demo for client demo (scopes: demo.read)"), done.stdout
        # without a token, the service refuses the call before its handler runs
        anonymous = bash(
            f"{sys.executable} -c 'import grpc; from google.protobuf import wrappers_pb2 as w; "
            f'c = grpc.secure_channel("127.0.0.1:{port}", grpc.local_channel_credentials()); '
            'f = c.unary_unary("/examples.Orders/List", request_serializer=w.StringValue.SerializeToString, '
            "response_deserializer=w.StringValue.FromString); f(w.StringValue(), timeout=10)'",
            env=env,
            cwd=tmp_path,
        )
        assert anonymous.returncode != 0 and "UNAUTHENTICATED" in anonymous.stderr, anonymous.stderr
    finally:
        service.terminate()
        service.wait(timeout=10)
        log.close()


# -- "Getting tokens over HTTP": the curl lines ----------------------------------------

HTTP_HEADING = "## Getting tokens over HTTP"


def curl_lines(markdown: str) -> list[str]:
    """The lines of the ```sh blocks of the section on OAuth 2.0 over HTTP, in order."""
    section = markdown.split(HTTP_HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\s*\n(.*?)^```", section, re.M | re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_the_readme_curl_lines_work_when_pasted(dev: DevServer, tmp_path: pathlib.Path) -> None:
    """Pasted after the dev server's export line, each curl line does what the README says."""
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is missing: `make system-packages` installs the Debian package curl")
        pytest.skip("needs curl (Debian package curl)")
    assert dev.export_line is not None and "ROTOR_HTTP=http://" in dev.export_line, dev.banner
    lines = curl_lines(README.read_text())
    assert sum("curl " in line for line in lines) >= 8, lines
    script = ["set -eo pipefail", dev.export_line]
    for i, line in enumerate(lines):
        script += [f"echo '{MARK}{i}'", line, "echo"]
    done = bash("\n".join(script) + "\n", env=env_with_bin(), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = [o.strip() for o in re.split(rf"^{MARK}\d+\n", done.stdout, flags=re.M)[1:]]
    assert len(out) == len(lines), done.stdout
    pairs = list(zip(lines, out, strict=True))
    first = json.loads(out[0])
    assert first["token_type"] == "Bearer" and first["scope"] == "demo.read" and first["access_token"]
    refreshed, reused = (json.loads(o) for line, o in pairs if "grant_type=refresh_token" in line)
    assert refreshed["scope"] == "demo.read"  # narrowed, with client_secret_post
    assert reused["error_reason"] == "REFRESH_TOKEN_REUSED"
    before, after = (json.loads(o) for line, o in pairs if "/oauth2/introspect" in line)
    assert before["active"] is True and before["client_id"] == "demo"
    assert after == {"active": False}
    assert [o for line, o in pairs if "/oauth2/revoke" in line] == ["200"]
    metadata = json.loads(out[-1])
    assert metadata["token_endpoint"].endswith("/oauth2/token")
