"""Build posthoc_csra/data/imagenet_to_{voc2007,coco2014}.json from WordNet 3.0 hyponymy.

ImageNet-1k class ids are WordNet 3.0 noun offsets ('n02084071' = data.noun offset
02084071).  For every target class (VOC 2007: 20, COCO 2014: 80) we choose one or a few
*root* synsets by hand below; the class's ImageNet members are all ImageNet-1k classes
that are the root itself or a (transitive, instance pointers included) hyponym of a root,
minus an optional hand-written exclusion list.  Target classes with no root are
*unmapped*: ``map_scores`` gives them NaN columns.

Offline, no nltk: WordNet's database files come from the Debian package::

    apt-get update && apt-get install -y --no-install-recommends wordnet-base
    python benchmarks/build_classmaps.py            # --wordnet DIR to point elsewhere

The JSON files are committed; nothing at run time needs WordNet.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VERSION = "1"
HERE = Path(__file__).resolve().parent
OUT_DIR = HERE.parent / "posthoc_csra" / "data"
WORDNET_DIRS = ("/usr/share/wordnet", "/usr/share/wordnet/dict", "/usr/local/share/wordnet")

# Root synsets: "offset:lemma" (the lemma is checked against data.noun to catch typos).
AIRPLANE = ["n02691156:airplane", "n04552348:warplane"]  # airliner, warplane (not airship/balloon)
BICYCLE = ["n02834778:bicycle"]            # mountain bike, bicycle-built-for-two
BIRD = ["n01503061:bird"]                  # 59 birds (note: ImageNet 'kite' is the bird)
BOAT = ["n04530566:watercraft"]            # boats and ships: canoe ... liner, container ship
BOTTLE = ["n02876657:bottle"]              # beer/wine/pop/water/pill bottles, jugs
BUS = ["n02924116:bus"]                    # school bus, trolleybus, minibus
CAR = ["n02958343:car"]                    # motorcar: cab, jeep, minivan, sports car, ...
CAT = ["n02121808:domestic_cat"]           # domestic cats only (no lynx, cougar, big cats)
CHAIR = ["n03001627:chair"]                # barber, folding, rocking chair, throne
COW = ["n02402425:cattle"]                 # ox (water buffalo and bison are not cattle)
DINING_TABLE = ["n03201208:dining_table"]
DOG = ["n02084071:dog"]                    # domestic dog: the ~118 breeds, not wolves/foxes
HORSE = ["n02374451:horse"]                # sorrel (zebra is an equine, not a horse)
MOTORBIKE = ["n03790512:motorcycle", "n03791053:motor_scooter"]  # moped, motor scooter
POTTED_PLANT = ["n03991062:flowerpot"]     # ImageNet 'pot' (flowerpot)
SHEEP = ["n02411705:sheep"]                # ram (bighorn is a wild sheep outside sheep.n.01)
SOFA = ["n04256520:sofa"]                  # studio couch
TRAIN = ["n04468005:train", "n03684823:locomotive", "n02959942:railcar",
         "n04335435:streetcar"]            # VOC/COCO 'train' includes trams
TV = ["n04404412:television", "n03782006:monitor", "n03211117:display"]  # + 'screen'

VOC_ROOTS: dict[str, list[str]] = {
    "aeroplane": AIRPLANE, "bicycle": BICYCLE, "bird": BIRD, "boat": BOAT, "bottle": BOTTLE,
    "bus": BUS, "car": CAR, "cat": CAT, "chair": CHAIR, "cow": COW,
    "diningtable": DINING_TABLE, "dog": DOG, "horse": HORSE, "motorbike": MOTORBIKE,
    "person": [],  # no ImageNet-1k class is a person category (scuba diver etc. are roles)
    "pottedplant": POTTED_PLANT, "sheep": SHEEP, "sofa": SOFA, "train": TRAIN,
    "tvmonitor": TV,
}

COCO_ROOTS: dict[str, list[str]] = {
    "person": [],
    "bicycle": BICYCLE, "car": CAR, "motorcycle": MOTORBIKE, "airplane": AIRPLANE,
    "bus": BUS, "train": TRAIN,
    "truck": ["n04490091:truck"],          # minus minivan (COCO labels minivans 'car')
    "boat": BOAT,
    "traffic light": ["n06874185:traffic_light"],
    "fire hydrant": [],
    "stop sign": ["n06794110:street_sign"],  # closest ImageNet class (a hypernym)
    "parking meter": ["n03891332:parking_meter"],
    "bench": ["n02828884:bench"],          # park bench
    "bird": BIRD, "cat": CAT, "dog": DOG, "horse": HORSE, "sheep": SHEEP, "cow": COW,
    "elephant": ["n02503517:elephant", "n01871265:tusker"],
    "bear": ["n02131653:bear"],            # brown, black, ice, sloth bear (not the panda)
    "zebra": ["n02391049:zebra"],
    "giraffe": [],
    "backpack": ["n02769748:backpack"],
    "umbrella": ["n04507155:umbrella"],
    "handbag": ["n04026417:purse"],
    "tie": ["n03815615:necktie"],          # Windsor tie, bow tie, bolo tie
    "suitcase": [], "frisbee": [],
    "skis": ["n04228054:ski"],
    "snowboard": [],
    "sports ball": ["n02778669:ball"],     # minus punching bag
    "kite": [],                            # ImageNet 'kite' is the bird of prey
    "baseball bat": [], "baseball glove": [], "skateboard": [], "surfboard": [],
    "tennis racket": ["n04039381:racket"],
    "bottle": BOTTLE,
    "wine glass": ["n03443371:goblet"],
    "cup": ["n03797390:mug", "n07930864:cup"],  # WordNet's 'cup' synset is odd; images are cups
    "fork": [],
    "knife": ["n03623556:knife"],          # cleaver, letter opener
    "spoon": ["n04284002:spoon"],          # wooden spoon
    "bowl": ["n02880940:bowl"],            # mixing bowl, soup bowl
    "banana": ["n07753592:banana"],
    "apple": ["n07739125:apple"],          # Granny Smith
    "sandwich": ["n07697100:hamburger"],   # cheeseburger (hotdog is its own COCO class)
    "orange": ["n07747607:orange"],
    "broccoli": ["n07714990:broccoli"],
    "carrot": [],
    "hot dog": ["n07697537:hotdog"],
    "pizza": ["n07873807:pizza"],
    "donut": [], "cake": [],
    "chair": CHAIR,
    "couch": SOFA,
    "potted plant": POTTED_PLANT,
    "bed": ["n02818832:bed", "n02766320:baby_bed"],  # four-poster, crib, cradle, bassinet
    "dining table": DINING_TABLE,
    "toilet": ["n04447861:toilet_seat"],   # the only toilet class in ImageNet-1k
    "tv": TV,
    "laptop": ["n03642806:laptop", "n03832673:notebook"],
    "mouse": ["n03793489:mouse"],          # computer mouse
    "remote": ["n04074963:remote_control"],
    "keyboard": ["n03614007:keyboard"],    # computer keyboard, typewriter keyboard
    "cell phone": ["n02992529:cellular_telephone"],
    "microwave": ["n03761084:microwave"],
    "oven": ["n03862676:oven"],            # Dutch oven, rotisserie
    "toaster": ["n04442312:toaster"],
    "sink": ["n04553703:washbasin"],
    "refrigerator": ["n04070727:refrigerator"],
    "book": ["n07248320:book_jacket", "n06596364:comic_book"],
    "clock": ["n03046257:clock"],          # analog, digital, wall clock
    "vase": ["n04522168:vase"],
    "scissors": [],
    "teddy bear": ["n04399382:teddy"],
    "hair drier": ["n03483316:hand_blower"],
    "toothbrush": [],
}

# ImageNet classes removed from a target class despite being hyponyms of its roots.
COCO_EXCLUDE: dict[str, list[str]] = {
    "truck": ["n03770679"],   # minivan
    "sports ball": ["n04023962"],  # punching bag
}

TARGETS = {
    "voc2007": (VOC_ROOTS, {}),
    "coco2014": (COCO_ROOTS, COCO_EXCLUDE),
}


def parse_data_noun(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (words, hypernym offsets) from a WordNet 3.0 data.noun file."""
    synsets: dict[str, tuple[list[str], list[str]]] = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            offset, w_cnt = fields[0], int(fields[3], 16)
            words = [fields[4 + 2 * k] for k in range(w_cnt)]
            p = 4 + 2 * w_cnt
            hypernyms = []
            for k in range(int(fields[p])):
                symbol, target, pos = fields[p + 1 + 4 * k: p + 4 + 4 * k]
                if pos == "n" and symbol in ("@", "@i"):  # hypernym / instance hypernym
                    hypernyms.append(target)
            synsets[offset] = (words, hypernyms)
    return synsets


def find_wordnet(explicit: str | None) -> Path:
    for d in ([explicit] if explicit else WORDNET_DIRS):
        if d and (Path(d) / "data.noun").is_file():
            return Path(d) / "data.noun"
    raise SystemExit("WordNet 3.0 data.noun not found; install it with `apt-get install -y "
                     "--no-install-recommends wordnet-base` or pass --wordnet DIR")


def imagenet_classes() -> tuple[list[str], list[str]]:
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    return list(info.label_names()), list(info.label_descriptions())


def build(target: str, synsets, wnids: list[str], names: list[str]) -> dict:
    roots, exclude = TARGETS[target]
    cache: dict[str, frozenset] = {}

    def ancestors(offset: str) -> frozenset:
        if offset not in cache:
            found = {offset}
            for h in synsets[offset][1]:
                found |= ancestors(h)
            cache[offset] = frozenset(found)
        return cache[offset]

    imagenet_anc = [ancestors(w[1:]) for w in wnids]
    classes, members, roots_out, unmapped = [], [], {}, []
    for cls, spec in roots.items():
        root_ids = []
        for item in spec:
            wnid, lemma = item.split(":")
            words = [w.lower() for w in synsets[wnid[1:]][0]]
            if lemma.lower() not in words:
                raise SystemExit(f"{target}/{cls}: root {wnid} has words {words}, not {lemma!r}")
            root_ids.append(wnid)
        skip = set(exclude.get(cls, []))
        idx = [i for i, anc in enumerate(imagenet_anc)
               if wnids[i] not in skip and any(r[1:] in anc for r in root_ids)]
        if spec and not idx:
            raise SystemExit(f"{target}/{cls}: roots {spec} cover no ImageNet-1k class")
        classes.append(cls)
        members.append(idx)
        roots_out[cls] = spec
        if not idx:
            unmapped.append(cls)
    return {
        "version": VERSION,
        "source_space": "imagenet-1k",
        "target_space": target,
        "wordnet": "3.0",
        "rule": "members = ImageNet-1k classes that are a root or a transitive hyponym of one, "
                "minus exclude",
        "classes": classes,
        "members": members,
        "member_names": [[names[i] for i in m] for m in members],
        "unmapped": unmapped,
        "roots": roots_out,
        "exclude": {k: v for k, v in exclude.items()},
    }


def to_json(data: dict) -> str:
    """JSON with one line per class in the per-class lists and dicts (diff-friendly)."""
    def dump(v):
        return json.dumps(v, ensure_ascii=False)

    parts = []
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], list):
            body = "[\n  " + ",\n  ".join(dump(x) for x in value) + "\n ]"
        elif isinstance(value, dict) and value:
            items = (f"{dump(k)}: {dump(v)}" for k, v in value.items())
            body = "{\n  " + ",\n  ".join(items) + "\n }"
        else:
            body = dump(value)
        parts.append(f" {dump(key)}: {body}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wordnet", help="folder with WordNet 3.0 data.noun")
    ap.add_argument("--out", default=str(OUT_DIR), help="output folder (default: package data)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if the committed JSON files differ from a fresh build")
    args = ap.parse_args(argv)
    synsets = parse_data_noun(find_wordnet(args.wordnet))
    wnids, names = imagenet_classes()
    missing = [w for w in wnids if w[1:] not in synsets]
    if missing:
        raise SystemExit(f"ImageNet synsets missing from data.noun (not WordNet 3.0?): "
                         f"{missing[:5]}")
    stale = False
    for target in TARGETS:
        data = build(target, synsets, wnids, names)
        text = to_json(data)
        path = Path(args.out) / f"imagenet_to_{target}.json"
        print(f"== {target}: {len(data['classes'])} classes, "
              f"{len(data['unmapped'])} unmapped: {', '.join(data['unmapped']) or '-'}")
        for cls, m, mn in zip(data["classes"], data["members"], data["member_names"]):
            shown = "; ".join(mn[:8]) + (f"; ... (+{len(mn) - 8})" if len(mn) > 8 else "")
            print(f"  {cls:>14s} {len(m):4d}  {shown or 'UNMAPPED'}")
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                print(f"STALE: {path}")
                stale = True
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"  wrote {path}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
