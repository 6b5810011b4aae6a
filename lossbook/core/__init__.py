"""The engine: data, models, training, losses, attacks and their checks, statistics and exact verification.

Nothing here knows about chapters, the search or the book; everything above imports from here."""
