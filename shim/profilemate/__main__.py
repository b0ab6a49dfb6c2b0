"""python -m profilemate doctor [--json]"""
import sys


def main():
    args = sys.argv[1:]
    if not args or args[0] != "doctor":
        sys.stderr.write("usage: python -m profilemate doctor [--json]\n")
        return 2
    from profilemate import doctor
    return doctor.main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
