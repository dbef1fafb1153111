"""The main job's training questions about the shipped solar_system corpus.

Each has a model answer, a whole sentence that names what the question asks about (the
demos an optimizer may keep), and its key fact (what
``research_assistant.answer_match`` looks for). None of them asks about a passage that
bench/quality_questions.py asks about, so the optimizer never sees the benchmark.
"""

from __future__ import annotations

TRAIN: list[dict[str, str]] = [
    {"question": "Which planet is closest to the Sun?", "answer": "Mercury is the closest planet to the Sun.", "fact": "Mercury"},
    {"question": "Which planet has the Great Red Spot?", "answer": "Jupiter has the Great Red Spot, a giant storm.", "fact": "Jupiter"},
    {"question": "What is the largest moon of Saturn?", "answer": "Titan is the largest moon of Saturn.", "fact": "Titan"},
    {"question": "Which planet is known as the Red Planet?", "answer": "Mars is known as the Red Planet.", "fact": "Mars"},
    {"question": "How many known moons does Uranus have?", "answer": "Uranus has 28 known moons.", "fact": "28"},
    {"question": "Which spacecraft mapped almost all of Venus with radar?", "answer": "Magellan mapped almost all of Venus with radar.", "fact": "Magellan"},
    {"question": "Which moon of Jupiter has an icy crust over a global ocean?", "answer": "Europa has an icy crust over a global ocean.", "fact": "Europa"},
    {"question": "How many Earth years does Saturn take to orbit the Sun?", "answer": "Saturn takes 29.5 Earth years to orbit the Sun.", "fact": "29.5"},
    {"question": "How many Earth days does Mercury take to orbit the Sun?", "answer": "Mercury takes 88 Earth days to orbit the Sun.", "fact": "88"},
    {"question": "How many times harder than Earth's air does Venus's atmosphere press on its surface?", "answer": "Venus's atmosphere presses on its surface about 92 times harder than Earth's air.", "fact": "92"},
    {"question": "What percentage of Earth's atmosphere is nitrogen?", "answer": "About 78 percent of Earth's atmosphere is nitrogen.", "fact": "78"},
    {"question": "What is the canyon system on Mars more than 4,000 km long called?", "answer": "The canyon system is called Valles Marineris.", "fact": "Valles Marineris"},
    {"question": "Which planet has the strongest magnetic field?", "answer": "Jupiter has the strongest magnetic field of any planet.", "fact": "Jupiter"},
    {"question": "How many known moons does Saturn have?", "answer": "Saturn has 146 known moons.", "fact": "146"},
    {"question": "What shape is the jet stream around Saturn's north pole?", "answer": "The jet stream around Saturn's north pole is shaped like a hexagon.", "fact": "hexagon"},
    {"question": "What is the axial tilt of Uranus?", "answer": "Uranus has an axial tilt of about 98 degrees.", "fact": "98"},
    {"question": "Which is the only spacecraft to have visited Uranus?", "answer": "Voyager 2 is the only spacecraft to have visited Uranus, in 1986.", "fact": "Voyager 2"},
    {"question": "What storm did Voyager 2 see on Neptune in 1989?", "answer": "Voyager 2 saw the Great Dark Spot on Neptune.", "fact": "Great Dark Spot"},
    {"question": "What is the heart-shaped plain of nitrogen ice on Pluto called?", "answer": "The heart-shaped plain on Pluto is called Sputnik Planitia.", "fact": "Sputnik Planitia"},
    {"question": "Who discovered Ceres?", "answer": "Ceres was discovered by Giuseppe Piazzi in 1801.", "fact": "Piazzi"},
    {"question": "What nickname did Makemake get?", "answer": "Makemake got the nickname Easterbunny.", "fact": "Easterbunny"},
    {"question": "What record does Voyager 1 carry?", "answer": "Voyager 1 carries a Golden Record of sounds and images from Earth.", "fact": "Golden Record"},
    {"question": "Which spacecraft was the first to cross the asteroid belt?", "answer": "Pioneer 10 was the first spacecraft to cross the asteroid belt.", "fact": "Pioneer 10"},
    {"question": "Which spacecraft has orbited Jupiter since 2016?", "answer": "Juno has orbited Jupiter since 2016.", "fact": "Juno"},
    {"question": "Which Kuiper Belt object did New Horizons fly past in 2019?", "answer": "New Horizons flew past Arrokoth in 2019.", "fact": "Arrokoth"},
    {"question": "Which asteroid did Dawn orbit in 2011?", "answer": "Dawn orbited the asteroid Vesta in 2011.", "fact": "Vesta"},
    {"question": "In which crater did the Perseverance rover land?", "answer": "Perseverance landed in Jezero Crater on Mars.", "fact": "Jezero"},
    {"question": "Who orbited the Moon while Armstrong and Aldrin walked on it?", "answer": "Michael Collins orbited the Moon while Armstrong and Aldrin walked on it.", "fact": "Collins"},
    {"question": "Which spacecraft orbited Mercury from 2011 to 2015?", "answer": "MESSENGER orbited Mercury from 2011 to 2015.", "fact": "MESSENGER"},
    {"question": "What was the name of Rosetta's lander?", "answer": "Rosetta's lander was called Philae.", "fact": "Philae"},
    {"question": "Where do long-period comets come from?", "answer": "Long-period comets come from the Oort Cloud.", "fact": "Oort"},
    {"question": "Which meteor shower is named as an example of Earth crossing comet debris?", "answer": "The Perseids are such a meteor shower.", "fact": "Perseids"},
    {"question": "Near which Lagrange points do Jupiter's Trojan asteroids gather?", "answer": "Jupiter's Trojan asteroids gather near its L4 and L5 Lagrange points.", "fact": "L4"},
    {"question": "What is the escape velocity from the Moon?", "answer": "The escape velocity from the Moon is about 2.4 km/s.", "fact": "2.4"},
    {"question": "How much lunar rock and soil did the Apollo astronauts return?", "answer": "The Apollo astronauts returned 382 kg of lunar rock and soil.", "fact": "382"},
    {"question": "What is the largest crater on Phobos called?", "answer": "The largest crater on Phobos is called Stickney.", "fact": "Stickney"},
    {"question": "What gives Io its yellow, orange and red colours?", "answer": "Sulfur compounds give Io its colours.", "fact": "sulfur"},
    {"question": "In which year was Europa Clipper launched?", "answer": "Europa Clipper was launched in October 2024.", "fact": "2024"},
    {"question": "What is the most heavily cratered object in the Solar System?", "answer": "Callisto is the most heavily cratered object in the Solar System.", "fact": "Callisto"},
    {"question": "What is the huge crater on Mimas called?", "answer": "The huge crater on Mimas is called Herschel.", "fact": "Herschel"},
    {"question": "How many days does Iapetus take per orbit?", "answer": "Iapetus takes 79 days per orbit.", "fact": "79"},
    {"question": "What is the tall cliff on Miranda called?", "answer": "The tall cliff on Miranda is called Verona Rupes.", "fact": "Verona Rupes"},
    {"question": "What gas erupts from the geysers on Triton?", "answer": "Nitrogen gas erupts from the geysers on Triton.", "fact": "nitrogen"},
    {"question": "What is the reddish polar region of Charon nicknamed?", "answer": "Charon's reddish polar region is nicknamed Mordor Macula.", "fact": "Mordor"},
    {"question": "Which ESA mission is planned to orbit Ganymede?", "answer": "ESA's JUICE mission is planned to orbit Ganymede.", "fact": "JUICE"},
    {"question": "At about what distance from the Sun did Voyager 1 cross the heliopause?", "answer": "Voyager 1 crossed the heliopause at about 121 AU from the Sun.", "fact": "121"},
    {"question": "In which year was the James Webb Space Telescope launched?", "answer": "The James Webb Space Telescope was launched in December 2021.", "fact": "2021"},
    {"question": "At what temperature does the Sun fuse hydrogen in its core?", "answer": "The Sun fuses hydrogen in its core at about 15 million °C.", "fact": "15 million"},
]
