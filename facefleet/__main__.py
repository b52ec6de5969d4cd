from facefleet.cli import main

main()
