#!/usr/bin/env bash
# rotor-client on its own: install clients/python alone into a fresh virtualenv, check that none
# of the server's dependencies came along, and run the client's tests from that virtualenv
# against a server started from the project's (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
work=$(mktemp -d)
server_pid=""
cleanup() {
	if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

"$PYTHON" -m venv "$work/venv" || python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
"$work/venv/bin/pip" install -q "./clients/python[test]"
for dist in aiohttp asyncpg aiosqlite prometheus-client uvloop rotor; do
	if "$work/venv/bin/pip" show -q "$dist" >/dev/null 2>&1; then
		echo "client-check: installing rotor-client also installed $dist" >&2
		exit 1
	fi
done

port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/rotor.toml" <<TOML
issuer = "https://rotor.client-check"
listen = "127.0.0.1:$port"
data_dir = "$work/data"
TOML
secret=$(.venv/bin/rotor clients add client-check --config "$work/rotor.toml" --audience api --admin --json |
	.venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["client_secret"])')
.venv/bin/rotor serve --config "$work/rotor.toml" >"$work/server.log" 2>&1 &
server_pid=$!
.venv/bin/python - "$port" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 60
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("client-check: the server did not start within 60 s")
        time.sleep(0.1)
PY
cd clients/python
ROTOR_ADDRESS="127.0.0.1:$port" ROTOR_ISSUER="https://rotor.client-check" ROTOR_CLIENT_ID=client-check \
	ROTOR_CLIENT_SECRET="$secret" ROTOR_AUDIENCE=api \
	"$work/venv/bin/pytest" -p no:cacheprovider --import-mode=importlib -q tests ||
	{ echo "client-check: failed; the server's log:" >&2; cat "$work/server.log" >&2; exit 1; }
