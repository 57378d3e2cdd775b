from setuptools import find_packages, setup

package_name = "stac_edge_segmenter"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    package_data={package_name: ["weights/*.pt", "weights/*.json", "configs/*.yaml"]},
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="STAC for ROS 2 developers",
    maintainer_email="stac@example.org",
    description=(
        "Edge side of STAC: decodes the robot's H.264 stream and runs semantic segmentation."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "segmenter_node = stac_edge_segmenter.segmenter_node:main",
        ],
    },
)
