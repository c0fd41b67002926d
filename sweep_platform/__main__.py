from sweep_platform.cli import main

main()
