from lipcheck.cli.app import main

main()
