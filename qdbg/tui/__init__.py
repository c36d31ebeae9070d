"""qdbg's terminal UI (Textual): `make_app(session)` builds the app the CLI runs.

Layout: app.py (QdbgApp, make_app, key bindings, workers), one widget per file (header, timeline,
layer_spark, stats_pane, diff_pane, logits_pane, breakpoints_pane, confirm, prompt, help_screen),
messages.py, commands.py (command palette), fmt.py (number/heat/sparkline formatting), qdbg.tcss.
The core (qdbg/*.py outside tui/ and cli.py) never imports this package.
"""

from __future__ import annotations

from qdbg.tui.app import QdbgApp, make_app

__all__ = ["QdbgApp", "make_app"]
