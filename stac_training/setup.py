from setuptools import find_packages, setup

package_name = "stac_training"

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
        "Training and data of STAC's default segmentation model: the CamVid reader and "
        "stac-train, which produced the weights the edge ships."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "stac-train = stac_training.train:main",
        ],
    },
)
