from setuptools import find_packages, setup

package_name = "stac_codec"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="STAC for ROS 2 developers",
    maintainer_email="stac@example.org",
    description=(
        "H.264 with per-macroblock QP maps, without ROS: libx264 through ctypes, a loss-aware "
        "PyAV decoder, Annex B helpers, and the QP maps' level-bank wire form."
    ),
    license="Apache-2.0",
)
