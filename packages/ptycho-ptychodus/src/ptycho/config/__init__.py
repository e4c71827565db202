"""``ptycho.config``: the legacy config classes Ptychodus builds (:mod:`ptycho.config.config`)."""
