from my_agent import main

main()
