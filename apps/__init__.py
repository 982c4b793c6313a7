"""Runnable apps over edgekit bundles, installed as ``edgekit.apps``: a terminal chat (``edgekit chat``), an
OpenAI-compatible server with a Sudoku page for solver bundles (``edgekit serve``), and mobile-app layouts
(``edgekit bundle --for ...``).  Each folder has a README with its commands."""
