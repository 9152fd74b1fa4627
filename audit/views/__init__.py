"""Views: everything that shows a finished results store (report, TensorBoard logs, the app,
the terminal, the What-If Tool). Views read the store; they never import the engine."""
