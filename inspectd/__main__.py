from inspectd.entry import main

main()
