"""Winnow's stages, one package each, in pipeline order: read, text, crawl, safety, embed, dedup, noise,
write; and `common`, the pieces they share. See the README's "Layout"."""
