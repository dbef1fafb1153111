"""Questions about the shipped solar_system corpus with gold facts, for bench_quality.py.

None of them is one of the main job's training questions (examples/_research_trainset.py
TRAIN) or its default question. ``gold``: an answer is right when it contains any of
these strings (case-insensitive); ``pids``: the passages that state the fact (for
retrieval recall@k).
"""

from __future__ import annotations

QUESTIONS: list[dict[str, object]] = [
    {"question": "How many known moons does Jupiter have?", "gold": ["95"], "pids": [30]},
    {"question": "How many Earth days does Mars take to orbit the Sun?", "gold": ["687"], "pids": [22]},
    {"question": "Which is the hottest planet?", "gold": ["Venus"], "pids": [10]},
    {"question": "What is the tallest volcano in the Solar System?", "gold": ["Olympus Mons"], "pids": [25]},
    {"question": "What gives Uranus its blue-green colour?", "gold": ["methane"], "pids": [46]},
    {"question": "Who discovered Uranus?", "gold": ["Herschel"], "pids": [47]},
    {"question": "In which year was Neptune found?", "gold": ["1846"], "pids": [52]},
    {"question": "What is the largest moon in the Solar System?", "gold": ["Ganymede"], "pids": [188]},
    {"question": "What is the name of Pluto's largest moon?", "gold": ["Charon"], "pids": [58, 224]},
    {"question": "In which year was Pluto reclassified as a dwarf planet?", "gold": ["2006"], "pids": [56]},
    {"question": "What are the names of the two moons of Mars?", "gold": ["Phobos and Deimos", "Phobos, Deimos", "Deimos and Phobos"], "pids": [23]},
    {"question": "What is the largest object in the asteroid belt?", "gold": ["Ceres"], "pids": [59]},
    {"question": "Which spacecraft was the first to enter interstellar space?", "gold": ["Voyager 1"], "pids": [71]},
    {"question": "Which moon is the most volcanically active body in the Solar System?", "gold": ["Io"], "pids": [180]},
    {"question": "Which moon of Saturn sprays plumes of water vapour from its south pole?", "gold": ["Enceladus"], "pids": [200]},
    {"question": "What are Titan's lakes made of?", "gold": ["methane"], "pids": [197]},
    {"question": "Where did the Curiosity rover land?", "gold": ["Gale"], "pids": [87]},
    {"question": "What was the name of the helicopter carried by Perseverance?", "gold": ["Ingenuity"], "pids": [90]},
    {"question": "On what date did Apollo 11 land on the Moon?", "gold": ["20 July 1969", "July 20, 1969"], "pids": [91]},
    {"question": "How long does sunlight take to reach Earth?", "gold": ["8 minutes"], "pids": [109]},
    {"question": "What causes Earth's seasons?", "gold": ["tilt"], "pids": [142]},
    {"question": "How often does Halley's Comet return?", "gold": ["76"], "pids": [121]},
    {"question": "Which asteroid did OSIRIS-REx collect a sample from?", "gold": ["Bennu"], "pids": [101]},
    {"question": "Which asteroid did Hayabusa2 return samples from?", "gold": ["Ryugu"], "pids": [99]},
    {"question": "What is the fastest object ever built by humans?", "gold": ["Parker"], "pids": [104]},
    {"question": "What is Saturn's mean density lower than?", "gold": ["water"], "pids": [39]},
    {"question": "Which planet has the fastest winds in the Solar System?", "gold": ["Neptune"], "pids": [53]},
    {"question": "What is the escape velocity from Earth?", "gold": ["11.2"], "pids": [152]},
    {"question": "Which moon is the only one known to have its own magnetic field?", "gold": ["Ganymede"], "pids": [189]},
    {"question": "Which spacecraft landed on Titan in January 2005?", "gold": ["Huygens"], "pids": [198]},
    {"question": "What is the largest moon of Uranus?", "gold": ["Titania"], "pids": [216]},
    {"question": "Which is Neptune's largest moon?", "gold": ["Triton"], "pids": [55, 220]},
    {"question": "What is the name of the moon of Eris?", "gold": ["Dysnomia"], "pids": [64]},
    {"question": "How old is the Solar System?", "gold": ["4.6 billion"], "pids": [134]},
]

# Retrieval-only probes worded away from the corpus (synonyms, no shared key words):
# where a neural embedder should beat word and character-n-gram overlap.
PARAPHRASES: list[dict[str, object]] = [
    {"question": "Which world has the greatest number of natural satellites?", "pids": [37]},
    {"question": "What makes the fourth world look rusty?", "pids": [24]},
    {"question": "Which body has the most eruptions of lava?", "pids": [180, 163]},
    {"question": "Which probe has travelled the farthest beyond the Sun's influence first?", "pids": [71, 167]},
    {"question": "Why is the ice giant lying on its side?", "pids": [45]},
    {"question": "Where could alien microbes live under a frozen shell near Jupiter?", "pids": [185, 184]},
    {"question": "What is the scorching planet with a runaway greenhouse?", "pids": [10]},
    {"question": "Which little helicopter flew on another world?", "pids": [90]},
    {"question": "When did people first walk on our satellite?", "pids": [91, 92]},
    {"question": "How long does it take for light from our star to get here?", "pids": [109]},
    {"question": "Which mission crashed itself into the ringed planet on purpose?", "pids": [81]},
    {"question": "What brought rocks back from a space rock in 2020?", "pids": [99]},
    {"question": "What is the biggest satellite of any planet?", "pids": [188]},
    {"question": "Which gas makes the seventh planet look cyan?", "pids": [46]},
    {"question": "Where do comets that come back every few years originate?", "pids": [116]},
    {"question": "What is the boundary where our star's wind stops?", "pids": [166]},
]
