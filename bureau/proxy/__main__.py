from bureau.proxy.main import main

main()
