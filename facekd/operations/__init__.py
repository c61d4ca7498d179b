"""One module per thing a user does to a workspace, each a function taking the open
:class:`facekd.state.workspace.WorkspaceState` first; never imports :mod:`facekd.workspace`."""
