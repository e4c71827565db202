"""``ptycho.workflows``: the legacy entry points Ptychodus calls
(:mod:`ptycho.workflows.components`)."""
