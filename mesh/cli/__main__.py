"""``python -m mesh.cli``: the same as the ``mesh`` console script."""

from mesh.cli._main import main

main()
