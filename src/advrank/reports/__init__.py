"""Reports: tables (Markdown, CSV, plain text), plots (matplotlib) and the HTML report."""
