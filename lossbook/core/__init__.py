"""The core: data, models, training, losses, attacks (and the registry of every attack by name, with
their checks), statistics and exact verification. Nothing here imports the search, the chapters or
the book machinery; everything above imports from here."""
