"""The operator dashboard: a page at ``/ui`` on the gateway's port, and its reads.

A leaf the composition root mounts (:mod:`mesh.runtime._control_plane`): it
reads the running services through :class:`~mesh.dashboard._snapshot.DashboardSources`
and serves the page's own files from ``static/`` (hand-written HTML, JavaScript,
CSS and SVG charts: no CDN, no build step). Nothing here is public API.
"""
