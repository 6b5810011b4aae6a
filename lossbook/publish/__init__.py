"""The book machinery: build and run chapters, the glance, Reproducing and Teaching pages, the plots
and the helpers a chapter's cells call. Reads the chapter registry; nothing below imports from here."""
