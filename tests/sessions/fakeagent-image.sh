#!/bin/sh
# Test image for coi's session tests: `coi` plus `fakeagent`, a tiny deterministic stand-in
# for an agent CLI (no network, no API key). Built by tests/sessions/conftest.py with
# `coi build custom coi-test-fakeagent --script <this file> --base coi`.
set -eu
cat >/usr/local/bin/fakeagent <<'AGENT'
#!/bin/bash
# fakeagent: prints a prompt, keeps notes in ~/.fakeagent (its "session state").
state="$HOME/.fakeagent"
mkdir -p "$state"
echo "FAKEAGENT START args=[$*]"
[ -f "$state/notes" ] && echo "FAKEAGENT NOTES $(tr '\n' ' ' <"$state/notes")"
case " $* " in *" --resume "*) echo "FAKEAGENT RESUMED" ;; esac
while true; do
    printf 'fake> '
    IFS= read -r line || exit 0
    case "$line" in
        note\ *) echo "${line#note }" >>"$state/notes"; echo "NOTED" ;;
        size) echo "SIZE[$(stty size)]" ;;
        run\ *) bash -c "${line#run }"; echo "RAN[$?]" ;;
        exit\ *) exit "${line#exit }" ;;
        "") ;;
        *) echo "UNKNOWN[$line]" ;;
    esac
done
AGENT
chmod 0755 /usr/local/bin/fakeagent
fakeagent </dev/null | head -1
