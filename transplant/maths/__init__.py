"""Pure tensor maths the methods stand on, without I/O: batch OMP, FAISS neighbour search,
sparsemax with preselection, Procrustes, word-alignment symmetrization."""
