"""Linear algebra the matrix transforms share: inverse p-th roots of
symmetric positive semi-definite matrices (Shampoo, K-FAC, SOAP) and the
batched matrix products they are built from."""

from gradtx.linalg.matrix_roots import inverse_pth_root

__all__ = ["inverse_pth_root"]
