"""Reports: report.json / report.csv (report_json), HTML and PDF (html_pdf)."""
