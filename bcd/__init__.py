"""bcd: trustworthy acute lymphoblastic leukemia classification experiments."""

import os

# albumentations otherwise checks PyPI for a newer version at import, which hangs without a network
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
