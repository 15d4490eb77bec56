"""One image on the host: decoding an upload or file into upright RGB (`decode`), the resize to the network input
(`preprocess`), the class map from the network's low-resolution logits (`upsample`), class maps back at the original
size and their legend (`classmap`), and the pictures drawn from a class map (`visuals`: colour mask, overlay, palette
PNG, display-size copies).
"""
