"""analysis: result tables, Welch tests, scale factors, CKA/SVCCA, convergence and prediction overlap."""
