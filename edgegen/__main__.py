from edgegen.cli import main

main()
