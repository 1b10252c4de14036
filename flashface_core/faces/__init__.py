"""Reference faces: the menus (``choices``), detection backends (``detection``), the official RetinaFace
(``retinaface``), the official crop (``alignment``) and photos to FlashFace references (``encoding``)."""
