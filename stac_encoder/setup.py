from setuptools import find_packages, setup

package_name = "stac_encoder"

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
        "Robot side of STAC: the camera stream encoded as H.264 with the edge's "
        "per-macroblock QP map."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "encoder_node = stac_encoder.encoder_node:main",
            "video_source_node = stac_encoder.video_source_node:main",
        ],
    },
)
