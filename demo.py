"""The embedded default: a small dataset made from the photos that scikit-image ships.

Each photo is a class; its examples are random crops at random scales, some flipped, so the
task is "which photo is this patch from". It needs no download, so `python train.py --demo`
runs the whole pipeline on any machine.
"""
import os

import imageio.v3 as iio
import numpy as np
import skimage.data
import skimage.transform

PHOTOS = ('astronaut', 'camera', 'chelsea', 'coffee', 'coins', 'grass', 'hubble_deep_field',
          'immunohistochemistry', 'retina', 'rocket')
CROP_SIZE = 96  # pixels on a side of each saved example


def random_crops(photo, count, rng, size=CROP_SIZE):
    """`count` random square crops of `photo` (a third to two thirds of its short side), resized."""
    photo = np.asarray(photo)
    height, width = photo.shape[:2]
    crops = []
    for _ in range(count):
        side = int(rng.uniform(1 / 3, 2 / 3) * min(height, width))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = photo[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = skimage.transform.resize(crop, (size, size), anti_aliasing=True, preserve_range=True)
        crops.append(np.clip(np.round(crop), 0, 255).astype(np.uint8))
    return crops


def make_dataset(root, per_class=60, seed=0, photos=PHOTOS):
    """Write root/<photo>/<n>.jpg, `per_class` crops of each photo (class folders layout)."""
    rng = np.random.default_rng(seed)
    for name in photos:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i, crop in enumerate(random_crops(getattr(skimage.data, name)(), per_class, rng)):
            iio.imwrite(os.path.join(root, name, '%03d.jpg' % i), crop, quality=90)


def make_samples(directory, seed=1, photos=PHOTOS):
    """One new crop of each photo, <photo>.jpg, for trying inference on."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name in photos:
        paths.append(os.path.join(directory, name + '.jpg'))
        iio.imwrite(paths[-1], random_crops(getattr(skimage.data, name)(), 1, rng)[0], quality=90)
    return paths


def make_many(root, count, classes=101, side=48, seed=0):
    """Write `count` small JPEGs into `classes` class folders (root/class_NNN/NNNNNNN.jpg), each
    class one noise picture `side` px wide written again and again: a dataset of any size in
    seconds, for measuring what grows with the number of images."""
    rng = np.random.default_rng(seed)
    pictures = []
    for c in range(classes):
        os.makedirs(os.path.join(root, 'class_%03d' % c), exist_ok=True)
        pixels = rng.integers(0, 256, [side * 3 // 4, side, 3], dtype=np.uint8)
        pictures.append(iio.imwrite('<bytes>', pixels, extension='.jpg', quality=90))
    for i in range(count):
        with open(os.path.join(root, 'class_%03d' % (i % classes), '%07d.jpg' % i), 'wb') as f:
            f.write(pictures[i % classes])
