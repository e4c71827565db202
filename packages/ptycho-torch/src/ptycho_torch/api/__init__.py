"""The Ptychodus 1.7 "PtychoPINN-Torch" entry (``specs/torch-backend.md``, "Ptychodus entry"):
:mod:`ptycho_torch.api.base_api` holds the names Ptychodus's child processes import. Importing
this package imports no framework.
"""
