from setuptools import find_packages, setup

package_name = "stac_sensitivity"

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
        "Edge side of STAC: DNN input-gradient sensitivity turned into per-macroblock QP maps."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sensitivity_node = stac_sensitivity.sensitivity_node:main",
            "edge_container = stac_sensitivity.edge_container:main",
        ],
    },
)
