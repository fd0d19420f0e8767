"""`coi` with the session commands registered, for the session tests while app.py does not
register them yet (see SessionCoi.program). Same app, same entry point."""

import sys

from coi.launcher.cli.app import app, main
from coi.launcher.cli.session_cmds import default_to_shell, register

register(app)
sys.argv[1:] = default_to_shell(sys.argv[1:])
main()
