"""``python -m mesh.runtime``: the control plane in the foreground (what `mesh up` starts)."""

from mesh.runtime._control_plane import main

main()
