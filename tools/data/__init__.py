"""The images: an <class>/<image> folder found, split, decoded once; the generated set; facts about splits."""
