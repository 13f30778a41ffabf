"""One module per algorithm: docstring with the math, reference rule, class."""
