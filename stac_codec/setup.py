from setuptools import Extension, find_packages, setup

package_name = "stac_codec"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    # the hot loops of the mask coder (stac_codec.mask_wire) and of class ids from low-resolution
    # logits (stac_codec.logit_labels); g++ comes with scripts/setup.sh
    ext_modules=[
        Extension(
            f"stac_codec.{name}",
            [f"stac_codec/{name}.cpp"],
            extra_compile_args=["-O3", "-std=c++17"],
            language="c++",
        )
        for name in ("_mask_coder", "_logit_labels")
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="STAC for ROS 2 developers",
    maintainer_email="stac@example.org",
    description=(
        "H.264 with per-macroblock QP maps, without ROS: libx264 through ctypes, a loss-aware "
        "PyAV decoder, Annex B helpers, the QP maps' level-bank wire form and the masks' "
        "context-coded wire form."
    ),
    license="Apache-2.0",
)
