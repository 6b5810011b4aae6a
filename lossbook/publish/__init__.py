"""The book machinery: build and run chapters, the glance, Reproducing and Teaching pages, chapter
parameters, plots and notebook helpers. Reads the chapter registry; nothing below imports from here."""
