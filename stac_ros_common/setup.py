from setuptools import find_packages, setup

package_name = "stac_ros_common"

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
        "Node glue shared by every STAC node: QoS profiles, typed parameters, statistics, "
        "Image and numpy conversion, the newest-item worker."
    ),
    license="Apache-2.0",
)
