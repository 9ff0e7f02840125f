"""In deployment each message starts a fresh process: the SecFPP handlers that need no torch
must not import it (torch alone costs seconds per message there)."""

import subprocess
import sys


def test_key_setup_and_secpc_handlers_do_not_import_torch():
    code = (
        "import sys\n"
        "import client_app.app, client_app.secure_handlers, secpc.protocol\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'opacus') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
