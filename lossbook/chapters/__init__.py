"""The chapters' computations, one module per notebook, and the chapter registry."""
