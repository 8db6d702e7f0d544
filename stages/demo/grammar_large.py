"""The large demo grammar: zh and en sentences of 3-12 words over a few hundred words.

The small grammar (``stages.demo.sentences``) is sized for tiny models trained for minutes on a
CPU: about 1,200 distinct zh and en sentences, so a model can pass for a listener by guessing
from the grammar. This one is for models trained on a GPU (``config/recipes/gpu_study.yaml``):
millions of combinations per language, so nearly every clip carries a sentence its model has
never heard and only listening gets it right. It covers the presets' two languages only.

Same conventions as the small grammar: past tense in en (no agreement); every zh table entry is
one word unit; randomness only from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np

from stages.demo.draw import maybe, pick

MIN_WORDS, MAX_WORDS = 3, 12

# --- English ---------------------------------------------------------------------------------
EN = {
    "det": ("the", "a", "my", "your", "his", "her", "our", "their", "this", "that"),
    "adj": ("big", "small", "red", "blue", "green", "old", "young", "happy", "tired", "quiet",
            "little", "tall", "busy", "funny", "clever", "kind", "brown", "yellow", "new",
            "lazy"),
    "animate": ("cat", "dog", "man", "woman", "girl", "boy", "teacher", "doctor", "farmer",
                "baby", "friend", "mother", "father", "brother", "sister", "bird", "horse",
                "student", "driver", "neighbor"),
    "thing": ("ball", "book", "cup", "hat", "letter", "apple", "bottle", "chair", "table",
              "window", "door", "picture", "phone", "bag", "box", "car", "key", "coat", "song",
              "cake"),
    # (past, base): statements are in the past, questions with "did" take the base form.
    "transitive": (("saw", "see"), ("took", "take"), ("liked", "like"), ("washed", "wash"),
                   ("found", "find"), ("bought", "buy"), ("opened", "open"),
                   ("closed", "close"), ("carried", "carry"), ("painted", "paint"),
                   ("dropped", "drop"), ("moved", "move"), ("cleaned", "clean"),
                   ("wanted", "want"), ("made", "make"), ("kept", "keep")),
    "intransitive": (("slept", "sleep"), ("sang", "sing"), ("ran", "run"),
                     ("laughed", "laugh"), ("waited", "wait"), ("danced", "dance"),
                     ("cried", "cry"), ("smiled", "smile"), ("jumped", "jump"),
                     ("walked", "walk")),
    "place": ("in the park", "in the garden", "in the kitchen", "at school", "at home",
              "near the river", "behind the house", "on the bus", "at the station",
              "in the city"),
    "time": ("today", "yesterday", "again", "last night", "this morning", "every day",
             "on monday", "at noon"),
}
EN_EXTRA_WORDS = ("was", "very", "did", "where", "who", "an")


def _noun_phrase(rng: np.random.Generator, nouns: tuple[str, ...]) -> list[str]:
    words = [pick(rng, EN["det"])]
    if maybe(rng, 0.4):
        words.append(pick(rng, EN["adj"]))
    words.append(pick(rng, nouns))
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return words


def _optional(rng: np.random.Generator, key: str, probability: float) -> list[str]:
    return pick(rng, EN[key]).split() if maybe(rng, probability) else []


def english(rng: np.random.Generator) -> tuple[list[str], str]:
    kind = rng.random()
    subject = _noun_phrase(rng, EN["animate"])
    if kind < 0.1:  # yes/no question
        verb = pick(rng, EN["transitive"])[1]
        return ["did", *subject, verb, *_noun_phrase(rng, EN["thing"]),
                *_optional(rng, "place", 0.3)], "?"
    if kind < 0.16:
        return ["where", "did", *subject, pick(rng, EN["intransitive"])[1]], "?"
    if kind < 0.22:
        return ["who", pick(rng, EN["transitive"])[0], *_noun_phrase(rng, EN["thing"]),
                *_optional(rng, "time", 0.4)], "?"
    if kind < 0.4:
        degree = ["very"] if maybe(rng, 0.3) else []
        return [*subject, "was", *degree, pick(rng, EN["adj"]),
                *_optional(rng, "time", 0.4)], "."
    if kind < 0.6:
        return [*subject, pick(rng, EN["intransitive"])[0], *_optional(rng, "place", 0.5),
                *_optional(rng, "time", 0.4)], "."
    return [*subject, pick(rng, EN["transitive"])[0], *_noun_phrase(rng, EN["thing"]),
            *_optional(rng, "place", 0.35), *_optional(rng, "time", 0.35)], "."


# --- Mandarin --------------------------------------------------------------------------------
ZH = {
    "subject": ("我", "你", "他", "她", "我们", "你们", "他们", "老师", "妈妈", "爸爸", "哥哥",
                "姐姐", "弟弟", "妹妹", "朋友", "同学", "医生", "学生"),
    "time": ("今天", "明天", "昨天", "早上", "晚上", "下午", "周末", "现在"),
    "place": ("家", "学校", "公园", "商店", "图书馆", "饭馆", "办公室", "医院"),
    "verb_objects": {
        "看": ("书", "电视", "电影", "报纸", "比赛"),
        "吃": ("饭", "苹果", "面条", "饺子", "蛋糕", "西瓜"),
        "喝": ("水", "茶", "咖啡", "牛奶", "果汁"),
        "买": ("书", "苹果", "花", "衣服", "鞋", "水果"),
        "喜欢": ("花", "茶", "音乐", "小狗", "春天"),
        "写": ("字", "信", "作业", "日记"),
        "听": ("音乐", "歌", "故事", "广播"),
        "做": ("饭", "作业", "蛋糕", "运动"),
        "打": ("电话", "篮球", "网球"),
        "学": ("中文", "英语", "数学", "音乐"),
        "洗": ("衣服", "手", "碗", "车"),
    },
    "modal": ("想", "要", "会", "不"),
    "degree": ("很", "非常", "有点", "不"),
    "adjective": ("忙", "累", "高兴", "饿", "渴", "冷", "热", "开心", "漂亮", "聪明"),
}
ZH_EXTRA_WORDS = ("在", "了", "吗")


def mandarin(rng: np.random.Generator) -> tuple[list[str], str]:
    subject = [pick(rng, ZH["subject"])]
    time = [pick(rng, ZH["time"])] if maybe(rng, 0.5) else []
    head = [*time, *subject] if maybe(rng, 0.5) else [*subject, *time]
    question = maybe(rng, 0.12)
    end = "？" if question else "。"
    tail = ["吗"] if question else []
    if rng.random() < 0.2:
        return [*head, pick(rng, ZH["degree"]), pick(rng, ZH["adjective"]), *tail], end
    place = ["在", pick(rng, ZH["place"])] if maybe(rng, 0.35) else []
    modal = [pick(rng, ZH["modal"])] if maybe(rng, 0.35) else []
    verb = pick(rng, tuple(ZH["verb_objects"]))
    # 了 marks a finished action: not with a modal, 喜欢, or a time still to come.
    finished = not modal and verb != "喜欢" and time in ([], ["昨天"], ["早上"], ["下午"])
    aspect = ["了"] if finished and maybe(rng, 0.4) else []
    return [*head, *place, *modal, verb, *aspect, pick(rng, ZH["verb_objects"][verb]),
            *tail], end


BUILDERS = {"en": english, "zh": mandarin}
TABLES = {"en": EN, "zh": ZH}
EXTRA_WORDS = {"en": EN_EXTRA_WORDS, "zh": ZH_EXTRA_WORDS}
