"""hessian_core: exact, verified Hessian spectra of small neural networks."""
